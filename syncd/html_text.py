"""Plain text from the HTML body of a mail, hidden text included."""

from __future__ import annotations

import re
from html.parser import HTMLParser

#: Elements that start and end a line when a browser renders them.
BLOCK_ELEMENTS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "center",
        "dd", "details", "dialog", "dir", "div", "dl", "dt", "fieldset",
        "figcaption", "figure", "footer", "form", "frameset", "h1", "h2", "h3",
        "h4", "h5", "h6", "header", "hgroup", "html", "legend", "li", "main",
        "menu", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody",
        "tfoot", "thead", "title", "tr", "ul",
    }
)  # fmt: skip

#: Block elements that a browser sets apart by an empty line.
PARAGRAPH_ELEMENTS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table"})

#: Table cells: their text is kept on one line, separated by a space.
CELL_ELEMENTS = frozenset({"td", "th"})

#: Elements that have no end tag, so `<br/>` must not count twice.
VOID_ELEMENTS = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link",
        "meta", "param", "source", "track", "wbr",
    }
)  # fmt: skip

#: Elements whose content is program code, style rules or Office settings, never text.
SKIPPED_ELEMENTS = frozenset({"script", "style", "xml"})

# HTML collapses every run of these to one space. A no-break space becomes
# a plain one as well, so that labels and values stay readable.
_WHITESPACE = re.compile(r"[ \t\n\r\f\xa0]+")

# A "<" that cannot open a tag. Escaping it up front lets the parser take
# the surrounding text as one piece instead of one call per character.
_STRAY_LESS_THAN = re.compile(r"<(?![A-Za-z/!?])")

# The end of a comment as html.parser finds it, and an Outlook marked
# section. The second pattern stops at "<" and ">", so matching it at
# every "<![" stays linear.
_COMMENT_CLOSE = re.compile(r"--\s*>")
_OUTLOOK_MARKED_SECTION = re.compile(r"<!\[(?:if\b[^<>\]]*|else|endif)\]\s*>", re.IGNORECASE)

# A decimal character reference with more digits than Python's int() reads
# by default (4,300 on Python 3.11) makes html.unescape raise ValueError.
# Shorter runs are left to the parser.
_LONG_DECIMAL_REFERENCE = re.compile(r"&#([0-9]{33,})(;?)")

# Outlook and many newsletter tools put markup for Outlook only inside
# "downlevel-hidden" conditional comments: <!--[if mso]> ... <![endif]-->.
_CONDITIONAL_COMMENT = re.compile(r"^\[if[^\]]*\]>(?P<body>.*?)(?:(?:<|&lt;)!\[endif\])?$", re.DOTALL | re.IGNORECASE)


def html_to_text(html: str, *, max_chars: int = 5_000_000) -> str:
    """Convert HTML to plain text, keeping every text node a browser could show or hide.

    CSS is ignored, so text hidden by `display:none`, white-on-white colour,
    `font-size:0` or `mso-hide:all` is kept, because that is where templates
    often put a tracking code. Inline elements (span, a, b, font, wbr, ...)
    join their text without a space, so a code split across tags stays in
    one piece. Block elements start new lines. Text in <script>, <style> and
    Office <xml> settings is dropped. The <title> text is kept as a line of
    its own, because a template may put a merge field there. Conditional
    comments for Outlook are parsed as HTML, and other comments are dropped.
    Input beyond `max_chars` characters is cut off unread. The time taken
    grows linearly with the input.
    """
    converter = _TextCollector()
    converter.feed(_prepare(html[:max_chars]))
    converter.close()
    return converter.text()


def _prepare(html: str) -> str:
    """Rewrite the input that would make html.parser raise or take quadratic time."""
    return _escape_unclosed_tags(_LONG_DECIMAL_REFERENCE.sub(_shorten_reference, html))


def _shorten_reference(match: re.Match[str]) -> str:
    # Leading zeros do not change the character. Any other reference this
    # long names no Unicode character, which a browser shows as U+FFFD.
    digits, semicolon = match.group(1).lstrip("0"), match.group(2)
    return f"&#{digits or '0'}{semicolon}" if len(digits) <= 8 else "\ufffd"


def _escape_unclosed_tags(html: str) -> str:
    """Escape every "<" that opens markup which is never closed.

    html.parser in Python 3.11 rescans the rest of the input for each such
    "<", which takes quadratic time on input like "<a b=c <a b=c ..." or
    many "<!--" without "-->". Escaped, the "<" becomes text, which is what
    the parser would emit for it anyway. A tag counts as closed when its
    ">" comes before the next "<", so a "<" inside a quoted attribute value
    turns that one tag into text. Marked sections other than Outlook's
    `<![if ...]>`, `<![else]>` and `<![endif]>` are escaped as well, because
    the parser raises AssertionError on unknown ones.
    """
    html = _STRAY_LESS_THAN.sub("&lt;", html)
    end = len(html)
    pieces: list[str] = []
    copied_up_to = 0
    # Positions of the next ">" and the next comment end, where `end` means none.
    # Each search resumes past the previous hit, so the input is read a
    # bounded number of times.
    next_greater = -1
    next_comment_close = -1

    start = html.find("<")
    while start >= 0:
        next_less = html.find("<", start + 1)
        if next_less < 0:
            next_less = end

        if html.startswith("<!--", start):
            if next_comment_close < start + 4:
                found = _COMMENT_CLOSE.search(html, start + 4)
                next_comment_close = found.start() if found else end
            closed = next_comment_close < end
        elif html.startswith("<![", start):
            closed = _OUTLOOK_MARKED_SECTION.match(html, start) is not None
        else:
            if next_greater < start:
                found_at = html.find(">", start)
                next_greater = found_at if found_at >= 0 else end
            closed = next_greater < min(next_less, end)

        if not closed:
            pieces.append(html[copied_up_to:start])
            pieces.append("&lt;")
            copied_up_to = start + 1
        start = next_less if next_less < end else -1

    pieces.append(html[copied_up_to:])
    return "".join(pieces)


class _TextCollector(HTMLParser):
    """HTMLParser that writes text nodes and line breaks to a list of pieces."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._pieces: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        # Layout state of the output: newlines at its end (capped at 2), and
        # whether a space is owed before the next text on the same line.
        self._trailing_newlines = 2
        self._pending_space = False

    def text(self) -> str:
        return "".join(self._pieces).strip("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIPPED_ELEMENTS:
            self._skip_depth += 1
        elif tag == "br":
            self._write_newline()
        elif tag == "hr":
            self._end_line()
        elif tag in CELL_ELEMENTS:
            self._pending_space = self._trailing_newlines == 0
        elif tag in PARAGRAPH_ELEMENTS:
            self._end_paragraph()
        elif tag in BLOCK_ELEMENTS:
            self._end_line()

        if tag == "pre":
            self._pre_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED_ELEMENTS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "br":
            # Browsers treat a stray </br> as <br>.
            self._write_newline()
        elif tag in CELL_ELEMENTS:
            self._pending_space = self._trailing_newlines == 0
        elif tag in PARAGRAPH_ELEMENTS:
            self._end_paragraph()
        elif tag in BLOCK_ELEMENTS:
            self._end_line()

        if tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID_ELEMENTS:
            self.handle_endtag(tag)

    def handle_comment(self, data: str) -> None:
        # Comments cannot nest, so parsing the body of one comment again
        # reads every character at most twice and stays linear.
        match = _CONDITIONAL_COMMENT.match(data)
        # "<!--[if !mso]><!-->" leaves "<!" as the body. The markup that it
        # reveals follows the comment and is parsed as usual.
        if match is None or match["body"].strip() == "<!":
            return
        inner = _TextCollector()
        inner.feed(_prepare(match["body"]))
        inner.close()
        inner_text = inner.text()
        if inner_text:
            self._end_line()
            self._write_preformatted(inner_text)
            self._end_line()

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._pre_depth:
            self._write_preformatted(data)
            return
        self._write_flowing(data)

    def _write_flowing(self, data: str) -> None:
        words = _WHITESPACE.sub(" ", data)
        if not words:
            return
        if words == " ":
            self._pending_space = self._trailing_newlines == 0
            return

        if words[0] == " " and self._trailing_newlines == 0:
            self._pending_space = True
        if self._pending_space:
            self._pieces.append(" ")
        body = words.strip(" ")
        self._pieces.append(body)
        self._trailing_newlines = 0
        self._pending_space = words[-1] == " "

    def _write_preformatted(self, data: str) -> None:
        lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for index, line in enumerate(lines):
            if index:
                self._write_newline()
            if line:
                if self._pending_space:
                    self._pieces.append(" ")
                self._pieces.append(line.replace("\xa0", " "))
                self._trailing_newlines = 0
                self._pending_space = False

    def _write_newline(self) -> None:
        self._pieces.append("\n")
        self._trailing_newlines = min(2, self._trailing_newlines + 1)
        self._pending_space = False

    def _end_line(self) -> None:
        if self._trailing_newlines == 0:
            self._write_newline()
        self._pending_space = False

    def _end_paragraph(self) -> None:
        while self._trailing_newlines < 2:
            self._write_newline()
