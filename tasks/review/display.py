"""What a reviewer is shown of captured conversations.

A captured conversation is attacker-controlled input: whoever reaches the serving endpoint writes the
prompt, and a prompt can steer the answer. Shown in the Prefect UI (the review form's description is
rendered as Markdown), such text could become a link to click, an image fetched from the attacker's server
(a beacon the moment a reviewer opens the form) or raw HTML. So every piece of captured text is escaped
before it joins the Markdown: each ASCII punctuation character is backslash-escaped (CommonMark lets any
be), and `<`, `>`, `&` become HTML entities (which every Markdown renderer leaves as text, also those that
do not honour every backslash escape). It then renders as the characters that were typed, and nothing
else. In a terminal, rich markup is escaped the same way.

Control and invisible format characters (a terminal escape sequence, a right-to-left override that
reverses what the reviewer reads, zero-width text) are shown as `\ufffd`, so a reviewer sees that
something is hidden there. The records themselves are never changed: this is display only.
"""

from __future__ import annotations

import re
import unicodedata

from rich.markup import escape as escape_rich

# Every ASCII punctuation character (CommonMark 0.31, section 2.1), the set Markdown can give a meaning to.
_ASCII_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")
_HTML_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
HIDDEN = "\ufffd"


def escape_markdown(text: str) -> str:
    """`text` as Markdown that renders as exactly these characters: no emphasis, link, image or HTML."""
    return _ASCII_PUNCTUATION.sub(lambda match: _HTML_ENTITIES.get(match[0], "\\" + match[0]), text)


def visible(text: str) -> str:
    """Control and format characters (categories Cc and Cf) replaced by a visible mark."""
    return "".join(HIDDEN if unicodedata.category(char) in ("Cc", "Cf") else char for char in text)


def one_line(text: str, limit: int) -> str:
    """Whitespace collapsed (one line per turn in the list), cut to `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"


def markdown_text(text: object, limit: int) -> str:
    """Captured text for the review form: one line, cut, hidden characters marked, Markdown-escaped."""
    return escape_markdown(visible(one_line(str(text), limit)))


def terminal_text(text: object, limit: int) -> str:
    """Captured text for a rich console: one line, cut, hidden characters marked, markup escaped."""
    return escape_rich(visible(one_line(str(text), limit)))


def review_markdown(records: list[dict], number: int, shown_chars: int, problems: list[str]) -> str:
    """The form's description: the errors of the last submission if any, then each conversation of the
    batch (masked at capture, escaped here) with its id."""
    lines = [f"# Review batch {number}", ""]
    if problems:
        lines += [
            "**Your last submission was not recorded; nothing was written.** Fix these and submit again:",
            "",
            *(f"- {escape_markdown(visible(problem))}" for problem in problems),
            "",
        ]
    lines += [
        "For each conversation choose **approve** (the answer is right: train on it), **correct** (write "
        "the right answer in `corrected_answer`), **reject** (never train on it; give a `reason`) or "
        "**skip** (decide later). Text is PII-masked, and shown exactly as it was typed.",
        "",
    ]
    for record in records:
        when = markdown_text(record.get("timestamp", "?"), shown_chars)
        lines += [f"## {markdown_text(record['id'], shown_chars)} ({when})", ""]
        for message in record["messages"]:
            role, content = (markdown_text(message.get(key), shown_chars) for key in ("role", "content"))
            lines.append(f"- **{role}**: {content}")
        lines += [f"- **served answer**: {markdown_text(record['response'], shown_chars)}", ""]
    return "\n".join(lines)
