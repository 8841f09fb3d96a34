"""A corpus of awkward uploads, shared by the service and the match job's tests.

Each :class:`Upload` says what the REST service must answer (status and error code,
with the limits of :data:`SERVICE_LIMITS`) and what ``jobs/match.py`` must do: fail
with a named error and exit status 2 (``job_ids`` None), or write an output holding
exactly ``job_ids``, each once, and report ``job_dropped`` rows it could not output.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

HEADER = (
    "id",
    "name",
    "latitude",
    "longitude",
    "address",
    "city",
    "state",
    "zip",
    "country",
    "url",
    "phone",
    "categories",
)
SERVICE_LIMITS = ("service.max_rows=50", "service.max_body_bytes=150000")


@dataclass(frozen=True)
class Upload:
    """One awkward file and what must come of it."""

    name: str
    body: bytes
    status: int  # the service's answer
    code: str | None  # the service's error code (None for a 200)
    job_ids: tuple[str, ...] | None  # the job's output ids (None: exit status 2)
    job_dropped: int = 0  # rows only in the job's rejected-rows report


def _csv(rows: list[list[str]], header: tuple[str, ...] = HEADER, newline: str = "\n") -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _row(
    ident: str, name: str, lat: str = "48.8541", lon: str = "2.3326", **extra: str
) -> list[str]:
    values = dict.fromkeys(HEADER, "")
    values.update({"id": ident, "name": name, "latitude": lat, "longitude": lon, **extra})
    return [values[c] for c in HEADER]


PLAIN = [
    _row("p1", "Cafe de Flore", "48.8541", "2.3326", address="172 Bd Saint-Germain", city="Paris"),
    _row("p2", "Café de Flore", "48.85412", "2.33262", address="172 Boulevard Saint-Germain"),
    _row("p3", "Les Deux Magots", "48.8540", "2.3331", phone="+33 1 45 48 55 25"),
    _row("p4", "Brasserie Lipp", "48.8538", "2.3326", url="https://brasserielipp.fr"),
]
PLAIN_IDS = ("p1", "p2", "p3", "p4")
PLAIN_TEXT = _csv(PLAIN)


def _spread(n: int, prefix: str) -> list[list[str]]:
    """``n`` valid rows about 100 m apart on a line, ids ``<prefix><i>``."""
    return [
        _row(f"{prefix}{i}", f"Shop number {i}", f"{48.80 + i * 0.001:.4f}", "2.30")
        for i in range(n)
    ]


def corpus() -> list[Upload]:
    """The uploads (at least 30), each built fresh."""
    long_address = "Rue " + "x" * 60_000
    far = [
        _row("f1", "Far One", "40.0", "-3.0", address=long_address),
        _row("f2", "Far Two", "45.0", "10.0", address=long_address),
        _row("f3", "Far Three", "50.0", "20.0", address=long_address),
    ]
    many = _spread(60, "m")
    stack = [_row(f"s{i:02d}", f"Stall {i}", "13.7563", "100.5018") for i in range(30)]
    return [
        Upload("plain", PLAIN_TEXT.encode(), 200, None, PLAIN_IDS),
        Upload("bom", b"\xef\xbb\xbf" + PLAIN_TEXT.encode(), 200, None, PLAIN_IDS),
        Upload("crlf", _csv(PLAIN, newline="\r\n").encode(), 200, None, PLAIN_IDS),
        Upload(
            "quotes_commas_newlines",
            _csv(
                [
                    _row("q1", 'The "Old" Inn', address="1, Main Street"),
                    _row("q2", "Bar, Grill & Co", address="line one\nline two"),
                    _row("q3", "Plain", address='say ""hi""'),
                ]
            ).encode(),
            200,
            None,
            ("q1", "q2", "q3"),
        ),
        Upload("utf16", PLAIN_TEXT.encode("utf-16"), 400, "not_csv", None),
        Upload(
            "latin1",
            _csv([_row("l1", "Café Crème")]).encode("latin-1"),
            400,
            "not_utf8",
            None,
        ),
        Upload("semicolons", PLAIN_TEXT.replace(",", ";").encode(), 400, "missing_columns", None),
        Upload("tabs", PLAIN_TEXT.replace(",", "\t").encode(), 400, "missing_columns", None),
        Upload("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00", 400, "not_csv", None),
        Upload("json", b'{"id": "a", "name": "b"}\n', 400, "missing_columns", None),
        Upload("empty", b"", 400, "empty_body", None),
        Upload("blank_lines", b"\n  \n\r\n", 400, "empty_body", None),
        Upload("bom_only", b"\xef\xbb\xbf\n", 400, "empty_body", None),
        Upload("header_only", (",".join(HEADER) + "\n").encode(), 400, "no_rows", None),
        Upload(
            "duplicate_header",
            b"id,name,latitude,longitude,name\na,A,1,2,B\n",
            400,
            "duplicate_columns",
            None,
        ),
        Upload(
            "missing_longitude",
            b"id,name,latitude\na,A,1\n",
            400,
            "missing_columns",
            None,
        ),
        Upload(
            "required_columns_only",
            b"id,name,latitude,longitude\nr1,Kiosk,48.85,2.35\nr2,Kiosk,48.8501,2.3501\n",
            200,
            None,
            ("r1", "r2"),
        ),
        Upload(
            "header_with_spaces",
            b" id , name , latitude , longitude \nh1,Kiosk,48.85,2.35\nh2,Bar,48.86,2.36\n",
            200,
            None,
            ("h1", "h2"),
        ),
        Upload(
            "non_latin_extra_columns",
            _csv(
                [[*r, "x", "y", "z"] for r in PLAIN], header=(*HEADER, "категория", "名前", "🙂")
            ).encode(),
            200,
            None,
            PLAIN_IDS,
        ),
        Upload(
            "newline_in_a_column_name",
            _csv([[*r, "x"] for r in PLAIN], header=(*HEADER, "two\nlines")).encode(),
            200,
            None,
            PLAIN_IDS,
        ),
        Upload(
            "nul_in_a_value",
            _csv([*PLAIN[:2], _row("n1", "Nul\x00Bar")]).encode(),
            400,
            "not_csv",
            ("p1", "p2", "n1"),
        ),
        Upload(
            "duplicate_ids",
            _csv(
                [
                    _row("d1", "First"),
                    _row("d2", "Second"),
                    _row("d1", "First again"),
                    _row("d2", "Second again"),
                    _row("d2", "Second thrice"),
                    _row("d3", "Third", "48.86", "2.34"),
                ]
            ).encode(),
            422,
            "invalid_rows",
            ("d1", "d2", "d3"),
            3,
        ),
        Upload(
            "whitespace_ids",
            _csv(
                [
                    _row("w 1", "Spaced"),
                    _row("w2\t", "Tabbed"),
                    _row(" w3", "Leading space"),
                    _row("w4\u00a0", "No-break space"),
                    _row("w5", "Fine"),
                ]
            ).encode(),
            422,
            "invalid_rows",
            ("w5",),
            4,
        ),
        Upload(
            "newline_in_an_id",
            _csv([_row("x\ny", "Two-line id"), _row("x1", "Fine")]).encode(),
            422,
            "invalid_rows",
            ("x1",),
            1,
        ),
        Upload(
            "missing_id",
            _csv([_row("", "No id"), _row("   ", "Blank id"), _row("i1", "Fine")]).encode(),
            422,
            "invalid_rows",
            ("i1",),
            2,
        ),
        Upload(
            "missing_coordinates",
            _csv([_row("c1", "Nowhere", "", ""), *PLAIN[:2]]).encode(),
            422,
            "invalid_rows",
            ("c1", "p1", "p2"),
        ),
        Upload(
            "out_of_range",
            _csv(
                [_row("o1", "North", "95", "2"), _row("o2", "East", "1", "-200"), PLAIN[0]]
            ).encode(),
            422,
            "invalid_rows",
            ("o1", "o2", "p1"),
        ),
        Upload(
            "zero_zero",
            _csv([_row("z1", "Null Island", "0", "0"), _row("z2", "Equator", "0", "9")]).encode(),
            422,
            "invalid_rows",
            ("z1", "z2"),
        ),
        Upload(
            "non_numeric_coordinates",
            _csv(
                [
                    _row("n1", "North", "north", "2"),
                    _row("n2", "NaN", "NaN", "Infinity"),
                    _row("n3", "Comma", "48,85", "2,35"),
                    PLAIN[0],
                ]
            ).encode(),
            422,
            "invalid_rows",
            ("n1", "n2", "n3", "p1"),
        ),
        Upload(
            "name_of_100k_characters",
            _csv([_row("big", "N" * 100_000), PLAIN[0]]).encode(),
            422,
            "invalid_rows",
            ("big", "p1"),
        ),
        Upload(
            "formula_injection",
            _csv(
                [
                    _row("=1+1", '=HYPERLINK("http://x.test","click")'),
                    _row("+SUM(A1)", "+cmd|' /C calc'!A0"),
                    _row("@x", "@SUM(1)"),
                    _row("-2+3", "-1"),
                ]
            ).encode(),
            200,
            None,
            ("=1+1", "+SUM(A1)", "@x", "-2+3"),
        ),
        Upload(
            "non_latin_ids",
            _csv([_row("東京-1", "喫茶店"), _row("Zürich#2", "Café"), _row("ñ", "Niño")]).encode(),
            200,
            None,
            ("東京-1", "Zürich#2", "ñ"),
        ),
        Upload(
            "ragged_rows",
            (PLAIN_TEXT + "g1,Short row,48.85\n").encode(),
            400,
            "malformed_rows",
            (*PLAIN_IDS, "g1"),
        ),
        Upload(
            "unterminated_quote",
            (PLAIN_TEXT + 'u1,"Unterminated,48.85,2.35,,,,,,,,\n').encode(),
            400,
            "malformed_rows",
            (*PLAIN_IDS, "u1"),  # the job: u1 alone (malformed_csv_row, no coordinates)
        ),
        Upload("oversized_by_bytes", _csv(far).encode(), 413, "too_large", ("f1", "f2", "f3")),
        Upload(
            "oversized_by_rows",
            _csv(many).encode(),
            413,
            "too_many_rows",
            tuple(f"m{i}" for i in range(60)),
        ),
        Upload(
            "thirty_rows_at_one_point",
            _csv(stack).encode(),
            200,
            None,
            tuple(f"s{i:02d}" for i in range(30)),
        ),
        Upload(
            "across_the_antimeridian",
            _csv(
                [
                    _row("e1", "Ferry Pier", "-16.5", "179.99995"),
                    _row("w1", "Ferry Pier", "-16.5", "-179.99995"),
                ]
            ).encode(),
            200,
            None,
            ("e1", "w1"),
        ),
    ]
