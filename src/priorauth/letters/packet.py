"""Packet assembly with pypdf: fax cover sheet + letter + attachments, one bookmark per part.

Attachments are untrusted PDFs: size- and page-limited, encrypted ones refused, unreadable ones
reported as AttachmentError for that case only. It must not render pages itself (letters/render.py and letters/cover.py do).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pypdf import PdfReader, PdfWriter
from pypdf.errors import PyPdfError

from priorauth.errors import AttachmentError

MAX_ATTACHMENT_PAGES = 200
# pypdf logs each repair it makes to a broken file; our AttachmentError is the one report.
logging.getLogger("pypdf").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Part:
    title: str
    reader: PdfReader

    @property
    def pages(self) -> int:
        return len(self.reader.pages)


def read_attachment(path: Path, *, field: str, max_bytes: int) -> PdfReader:
    """Open one attachment, or raise AttachmentError saying plainly what is wrong with it."""
    try:
        size = path.stat().st_size
    except OSError:
        raise AttachmentError(field, f"file not found: {path.name}") from None
    if size > max_bytes:
        raise AttachmentError(
            field,
            f"{path.name} is {size / 1_048_576:.1f} MiB, over the {max_bytes // 1_048_576} MiB limit",
        )
    try:
        data = path.read_bytes()
        if not data.startswith(b"%PDF-"):
            raise AttachmentError(field, f"{path.name} is not a PDF file")
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise AttachmentError(field, f"{path.name} is encrypted; attach an unencrypted copy")
        pages = len(reader.pages)
        if pages == 0:
            raise AttachmentError(field, f"{path.name} has no pages")
        if pages > MAX_ATTACHMENT_PAGES:
            raise AttachmentError(
                field, f"{path.name} has {pages} pages, over {MAX_ATTACHMENT_PAGES}"
            )
        for page in reader.pages:  # touch every page now, so a broken one fails here
            _ = page.mediabox
    except AttachmentError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise AttachmentError(
            field, f"{path.name} cannot be read as a PDF ({type(exc).__name__})"
        ) from None
    except OSError as exc:
        raise AttachmentError(field, f"{path.name} cannot be read ({exc.strerror})") from None
    return reader


def assemble_packet(
    *,
    letter_pdf: bytes,
    attachments: list[tuple[str, PdfReader]],
    cover: Callable[[int, list[tuple[str, int]]], bytes],
    title: str,
) -> bytes:
    """Cover sheet, letter, attachments → one PDF with a bookmark per part.

    `cover(total_pages, parts)` renders the one-page cover sheet once the page counts are known.
    """
    parts = [Part("Letter of medical necessity", PdfReader(io.BytesIO(letter_pdf)))]
    parts += [Part(t, r) for t, r in attachments]
    listing = [(p.title, p.pages) for p in parts]
    total = 1 + sum(p.pages for p in parts)
    cover_reader = PdfReader(io.BytesIO(cover(total, listing)))
    if len(cover_reader.pages) != 1:
        raise ValueError("the fax cover sheet must be exactly one page")
    writer = PdfWriter()
    page_at = 0
    for part in [Part("Fax cover sheet", cover_reader), *parts]:
        for page in part.reader.pages:
            writer.add_page(page)
        writer.add_outline_item(title=part.title, page_number=page_at)
        page_at += part.pages
    writer.add_metadata(
        {"/Title": title, "/Creator": "priorauth", "/Producer": "priorauth (pypdf)"}
    )
    writer.page_mode = "/UseOutlines"
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
