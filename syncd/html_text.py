"""Plain text from the HTML body of a mail, hidden text included."""

from __future__ import annotations

import re
from collections.abc import Iterable
from html import unescape

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

#: Elements whose content is raw text up to their end tag, so that a "<" in
#: a script or style sheet opens no tag. Browsers and html.parser agree on these two.
RAW_TEXT_ELEMENTS = frozenset({"script", "style"})

# The layout action of each tag that has one. Every other tag (span, a, b,
# font, wbr, img, ...) is inline and changes nothing, so that the text on
# both sides of it joins without a space.
_SKIP, _BREAK, _LINE, _CELL, _PARAGRAPH = range(5)
_START_ACTIONS: dict[str, int] = {
    **dict.fromkeys(BLOCK_ELEMENTS, _LINE),
    **dict.fromkeys(PARAGRAPH_ELEMENTS, _PARAGRAPH),
    **dict.fromkeys(CELL_ELEMENTS, _CELL),
    **dict.fromkeys(SKIPPED_ELEMENTS, _SKIP),
    "br": _BREAK,
    "hr": _LINE,
}
# Browsers treat a stray </br> as <br>, and </hr> as nothing.
_END_ACTIONS = {tag: action for tag, action in _START_ACTIONS.items() if tag != "hr"}

# A "<" that cannot open markup, because no letter, "/", "!" or "?"
# follows it. html.parser reads it as text, and it neither ends nor opens
# a tag, comment or declaration.
_STRAY_LESS_THAN = r"<(?![A-Za-z/!?])"


def _run_without(excluded: str) -> str:
    """Return a pattern for a run of characters other than `excluded` and a "<" that opens markup."""
    return rf"[^<{excluded}]*+(?:{_STRAY_LESS_THAN}[^<{excluded}]*+)*+"


def _alternation(words: Iterable[str]) -> str:
    """Return a pattern that matches any of `words`, as a trie, so that each character is tried once."""
    by_first: dict[str, list[str]] = {}
    ends_here = False
    for word in words:
        if word:
            by_first.setdefault(word[0], []).append(word[1:])
        else:
            ends_here = True
    branches = [re.escape(first) + _alternation(rests) for first, rests in sorted(by_first.items())]
    if not branches:
        return ""
    return "(?:" + "|".join(branches) + ("|" if ends_here else "") + ")"


def _without_group_names(pattern: str) -> str:
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


_UP_TO_DOUBLE_QUOTE = _run_without('"')
_UP_TO_SINGLE_QUOTE = _run_without("'")
_UP_TO_GREATER_THAN = _run_without(">")
_UP_TO_BRACKET = _run_without(r">\]")

_TAG_NAME = rf"[a-zA-Z](?:[^\t\n\r\f\ />\x00<]++|{_STRAY_LESS_THAN})*+"

# A start tag. A quoted attribute value may contain ">", as in html.parser,
# so the tag ends at the first ">" outside quotes. A value whose quote is
# not closed before the next "<" that opens markup leaves the tag
# incomplete, and html.parser then reads the "<" as text.
_START_TAG = (
    rf"""<(?P<start>{_TAG_NAME})"""
    rf"""(?P<attributes>(?:[^<>=]++|{_STRAY_LESS_THAN}"""
    rf"""|=\s*+(?:"{_UP_TO_DOUBLE_QUOTE}"|'{_UP_TO_SINGLE_QUOTE}'|(?!["'])))*+)>"""
)

# An end tag, with the two name rules of html.parser: a plain name after
# optional white space, else any name right after "</" and whatever
# follows it up to ">".
_END_TAG = (
    r"</\s*+(?P<end>[a-zA-Z][-.a-zA-Z0-9:_]*+)\s*+>"
    rf"|</(?P<end_name>{_TAG_NAME}){_UP_TO_GREATER_THAN}>"
)

# Markup that carries no text and changes no layout: Outlook's marked
# sections <![if ...]>, <![else]> and <![endif]> (other marked sections stay
# text, as CDATA does in a browser), a doctype, a bogus comment ("<!" or "</"
# followed by anything else up to ">", </> included) and a processing
# instruction. A bogus comment never has the "]>" that a conditional comment needs.
_DROPPED_MARKUP = (
    rf"<!\[(?:[iI][fF]\b{_UP_TO_BRACKET}|[eE][lL][sS][eE]|[eE][nN][dD][iI][fF])\]\s*>"
    rf"|<![dD][oO][cC][tT][yY][pP][eE]{_UP_TO_GREATER_THAN}>"
    rf"|<(?:!(?!\[)|/){_UP_TO_GREATER_THAN}>"
    rf"|<\?{_UP_TO_GREATER_THAN}>"
)

# The start of a comment, and of any tag whose name, without regard to
# case, is one that changes the layout. Markup that starts otherwise is
# inline or dropped.
_LAYOUT_OR_COMMENT = (
    r"<!--|</?\s*+(?i:"
    + _alternation(_START_ACTIONS.keys() | _END_ACTIONS.keys())
    + rf")(?![^\t\n\r\f\ />\x00<]|{_STRAY_LESS_THAN})"
)

_ANY_MARKUP = _without_group_names(f"{_START_TAG}|{_END_TAG}|{_DROPPED_MARKUP}")

# Inline tags and dropped markup inside a run of text.
_INLINE_MARKUP = rf"(?!{_LAYOUT_OR_COMMENT})(?:{_ANY_MARKUP})"

# A "<" that starts no complete markup and no comment, such as the "<" of
# "<a" with no ">" before the next tag. html.parser reads it as text once
# the input ends.
_INCOMPLETE_MARKUP = rf"(?!<!--|{_ANY_MARKUP})<"

# The markup inside a run of text that a _TOKEN matched, for re.split, which
# then returns only the text. A run contains no layout tag and no comment, so
# the check for them is left out.
_MARKUP_IN_RUN = re.compile(_ANY_MARKUP)

# One token of HTML at a position: a run of text with the inline tags and
# dropped markup inside it, or markup that starts with "<". Every branch
# stops at the next "<" that opens markup, except that a comment's end is
# searched for separately, and the quantifiers are possessive. A failed
# match therefore costs no more than the distance to that "<", and the
# whole scan stays linear. The alternatives after the first are tried in
# the same order inside a run and outside it, so both read a piece of
# markup the same way.
_TOKEN = re.compile(
    rf"(?P<text>(?:[^<]++|{_STRAY_LESS_THAN}|{_INLINE_MARKUP}|{_INCOMPLETE_MARKUP})++)"
    rf"|{_START_TAG}|{_END_TAG}|(?P<comment_open><!--)|{_DROPPED_MARKUP}"
)

# The end of a comment as html.parser finds it.
_COMMENT_CLOSE = re.compile(r"--\s*>")

# The end tag of a raw-text element, as html.parser finds it.
_RAW_TEXT_END = {tag: re.compile(rf"</\s*{tag}\s*>", re.IGNORECASE) for tag in RAW_TEXT_ELEMENTS}

# A "/" before the ">" of a start tag that belongs to an unquoted attribute
# value (<a href=x/>), which leaves the tag open like html.parser does.
_SLASH_IN_BARE_VALUE = re.compile(r"=\s*[^\s\"'=]+/$")

# HTML collapses every run of these to one space. A no-break space becomes
# a plain one as well, so that labels and values stay readable.
_WHITESPACE = re.compile(r"[ \t\n\r\f\xa0]+")

# The characters that str.split takes for white space but HTML does not:
# all of them in ASCII, and a pattern for the rest.
_ASCII_OTHER_WHITESPACE = "\v\x1c\x1d\x1e\x1f"
_OTHER_WHITESPACE = re.compile("[\v\x1c-\x1f\x85\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")

# A decimal character reference with more digits than Python's int() reads
# by default (4,300 on Python 3.11) makes html.unescape raise ValueError.
# Shorter runs are left to html.unescape.
_LONG_DECIMAL_REFERENCE = re.compile(r"&#([0-9]{33,})(;?)")
_REFERENCE_START = re.compile(r"&[#A-Za-z]")

# Outlook and many newsletter tools put markup for Outlook only inside
# "downlevel-hidden" conditional comments: <!--[if mso]> ... <![endif]-->.
_CONDITIONAL_COMMENT = re.compile(r"^\[if[^\]]*\]>(?P<body>.*?)(?:<!\[endif\])?$", re.DOTALL | re.IGNORECASE)


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
    writer = _TextWriter()
    _convert(html[:max_chars], writer)
    return writer.text()


def _convert(html: str, writer: _TextWriter) -> None:
    """Tokenize `html` from left to right and write its text to `writer`.

    The tokens follow the rules of Python's html.parser (3.11): character
    references are decoded in text only, tag names are lower-cased, the
    content of <script> and <style> is skipped up to the matching end tag,
    and a "<" that opens no complete markup is text. One regular-expression
    match reads a run of text together with the inline tags in it, and the
    run is written as one piece, so Python code runs only per layout tag.

    NOTE: two kinds of broken markup read differently from html.parser. A
    quoted attribute value that runs past the next tag ends the tag here
    (html.parser drops everything up to the closing quote), and
    "<!--[if !mso]><!-->" never leaves a stray "<!" in the text.
    """
    run: list[str] = []
    position = 0
    end = len(html)
    # Where the next comment close starts and ends, or `end` when there is
    # none. A search resumes only past the previous hit, so even many
    # unclosed "<!--" read the input once.
    close_start = close_end = -1

    while position < end:
        token = _TOKEN.match(html, position)
        if token is None:
            _add_text(writer, run, "<")
            position += 1
            continue
        position = token.end()
        # lastgroup names the last group that closed, which for a start tag
        # is `attributes`, and None for dropped markup.
        kind = token.lastgroup

        if kind == "text":
            if writer.skip_depth:
                continue
            text = token.group()
            if "<" in text:
                text = "".join(map(_decode_references, _MARKUP_IN_RUN.split(text)))
            elif "&" in text:
                text = _decode_references(text)
            if writer.pre_depth:
                writer.write_preformatted(text)
            else:
                run.append(text)
            continue

        if kind == "attributes":
            tag = token.group("start").lower()
            action = _START_ACTIONS.get(tag)
            if action is None:
                continue
            if run:
                writer.write_flowing("".join(run))
                run.clear()
            self_closing = _is_self_closing(token.group("attributes"))
            writer.start_tag(tag, action)
            if self_closing and tag not in VOID_ELEMENTS:
                writer.end_tag(tag, _END_ACTIONS[tag])
            elif tag in RAW_TEXT_ELEMENTS and not self_closing:
                # Without an end tag the rest of the input is skipped, as
                # html.parser does.
                close = _RAW_TEXT_END[tag].search(html, position)
                if close is None:
                    break
                position = close.end()
                writer.end_tag(tag, _SKIP)
            continue

        if kind == "end" or kind == "end_name":
            tag = token.group(kind).lower()
            action = _END_ACTIONS.get(tag)
            if action is None:
                continue
            if run:
                writer.write_flowing("".join(run))
                run.clear()
            writer.end_tag(tag, action)
            continue

        if kind == "comment_open":
            start = position - 4
            if close_start < position:
                found = _COMMENT_CLOSE.search(html, position)
                close_start, close_end = (found.start(), found.end()) if found else (end, end)
            if close_start == end:
                # A comment that is never closed is text.
                _add_text(writer, run, "<")
                position = start + 1
                continue
            comment = html[position:close_start]
            position = close_end
        else:
            # A doctype, a marked section, a bogus comment or a processing instruction.
            continue

        match = _CONDITIONAL_COMMENT.match(comment)
        # "<!--[if !mso]><!-->" leaves "<!" as the body. The markup that it
        # reveals follows the comment and is read as usual.
        if match is None or match["body"].strip() == "<!":
            continue
        if run:
            writer.write_flowing("".join(run))
            run.clear()
        # A comment body contains no comment close, so this recursion is
        # one level deep and reads each character at most twice.
        inner = _TextWriter()
        _convert(match["body"], inner)
        writer.write_block(inner.text())

    if run:
        writer.write_flowing("".join(run))


def _add_text(writer: _TextWriter, run: list[str], text: str) -> None:
    """Add decoded `text` to the output: to `run`, or straight to `writer` inside <pre>."""
    if writer.skip_depth:
        return
    if writer.pre_depth:
        writer.write_preformatted(text)
    else:
        run.append(text)


def _is_self_closing(attributes: str) -> bool:
    """Return whether a start tag ends in "/>", like <br/>, as html.parser reads it."""
    if not attributes.endswith("/"):
        return False
    # In <a href=x/> the "/" belongs to the unquoted value.
    return _SLASH_IN_BARE_VALUE.search(attributes) is None


def _decode_references(text: str) -> str:
    # html.unescape changes only an "&" that a letter or "#" follows, and
    # calls a Python function for every other "&" as well.
    if "&" not in text or _REFERENCE_START.search(text) is None:
        return text
    if "&#" in text:
        text = _LONG_DECIMAL_REFERENCE.sub(_shorten_reference, text)
    return unescape(text)


def _shorten_reference(match: re.Match[str]) -> str:
    # Leading zeros do not change the character. Any other reference this
    # long names no Unicode character, which a browser shows as U+FFFD.
    digits, semicolon = match.group(1).lstrip("0"), match.group(2)
    return f"&#{digits or '0'}{semicolon}" if len(digits) <= 8 else "\ufffd"


def _collapse_whitespace(data: str) -> str:
    """Return `data` with each run of HTML white space and no-break spaces turned into one space."""
    if data.isascii():
        splits_alike = not any(char in data for char in _ASCII_OTHER_WHITESPACE)
    else:
        splits_alike = _OTHER_WHITESPACE.search(data) is None
    if not splits_alike:
        return _WHITESPACE.sub(" ", data)

    # str.split and join run many times faster than the pattern, and give
    # the same result when the text has no other white space.
    words = " ".join(data.split())
    if not words:
        return " " if data else ""
    leading = " " if data[0].isspace() else ""
    trailing = " " if data[-1].isspace() else ""
    return leading + words + trailing


class _TextWriter:
    """Text written so far, with the layout state that the next text depends on."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        #: Open <script>, <style> and <xml> elements, whose text is skipped.
        self.skip_depth = 0
        #: Open <pre> elements, whose text keeps its line breaks.
        self.pre_depth = 0
        # Newlines at the end of the output (capped at 2), and whether a
        # space is owed before the next text on the same line.
        self._trailing_newlines = 2
        self._pending_space = False

    def text(self) -> str:
        return "".join(self._pieces).strip("\n")

    def start_tag(self, tag: str, action: int) -> None:
        if action == _SKIP:
            self.skip_depth += 1
        elif action == _BREAK:
            self._write_newline()
        elif action == _CELL:
            self._pending_space = self._trailing_newlines == 0
        elif action == _PARAGRAPH:
            self._end_paragraph()
        else:
            self._end_line()
        if tag == "pre":
            self.pre_depth += 1

    def end_tag(self, tag: str, action: int) -> None:
        if action == _SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif action == _BREAK:
            self._write_newline()
        elif action == _CELL:
            self._pending_space = self._trailing_newlines == 0
        elif action == _PARAGRAPH:
            self._end_paragraph()
        else:
            self._end_line()
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)

    def write_block(self, text: str) -> None:
        """Write `text` as it is, on lines of its own."""
        if text:
            self._end_line()
            self.write_preformatted(text)
            self._end_line()

    def write_flowing(self, data: str) -> None:
        words = _collapse_whitespace(data)
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

    def write_preformatted(self, data: str) -> None:
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
