# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a rendered maintenance report back: its structure, what it may contain, and every figure against its source."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

VOID = {"meta", "br", "wbr", "hr", "img", "link", "input"}
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "nav", "section", "footer", "div", "span", "p", "a", "b",
    "h1", "h2", "h3", "code", "data", "br", "ul", "li", "table", "thead", "tbody", "tr", "th", "td",
    "svg", "g", "rect", "text", "tspan", "line", "circle", "path",
}
SIZE_RE = re.compile(r"\d[\d,.]*\s?(?:B|KiB|MiB|GiB|TiB|PiB|EiB)\b")
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "TiB": 1024 ** 4, "PiB": 1024 ** 5, "EiB": 1024 ** 6}


@dataclass
class Figure:
    value: str
    of: str
    text: str = ""


class Page(HTMLParser):
    """The page as the checks need it; ``problems`` lists what is not well-formed or not allowed."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.figures: list[Figure] = []
        self.problems: list[str] = []
        self.ids: list[str] = []
        self.links: list[str] = []
        self.tags: dict[str, int] = {}
        self.classes_seen: dict[str, int] = {}
        self.loose_sizes: list[str] = []   # sizes written outside a figure and outside a module's message
        self.text: list[str] = []
        self.doctype = ""
        self.stack: list[tuple[str, set[str]]] = []
        self.open_figures: list[Figure | None] = []

    def handle_decl(self, decl):
        self.doctype = decl

    def _start(self, tag, attrs, closed):
        attributes = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag not in ALLOWED_TAGS:
            self.problems.append("element <%s> is not allowed" % tag)
        for name, value in attrs:
            if name.startswith("on") or name in ("src", "srcset", "xlink:href", "style", "background", "action", "formaction"):
                self.problems.append("attribute %s=%r on <%s> is not allowed" % (name, value, tag))
        if "href" in attributes:
            self.links.append(attributes["href"] or "")
        if "id" in attributes:
            self.ids.append(attributes["id"] or "")
        classes = set((attributes.get("class") or "").split())
        for name in classes:
            self.classes_seen[name] = self.classes_seen.get(name, 0) + 1
        of = attributes.get("data-of")
        if of is not None:
            value = attributes.get("value") if tag == "data" else attributes.get("data-value")
            figure = Figure(value or "", of)
            self.figures.append(figure)
        if closed or tag in VOID:
            return
        self.stack.append((tag, classes))
        self.open_figures.append(self.figures[-1] if of is not None else None)

    def handle_starttag(self, tag, attrs):
        self._start(tag, attrs, closed=False)

    def handle_startendtag(self, tag, attrs):
        self._start(tag, attrs, closed=True)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            self.problems.append("</%s> does not close %s" % (tag, self.stack[-1][0] if self.stack else "anything"))
            return
        self.stack.pop()
        self.open_figures.pop()

    def handle_data(self, data):
        for figure in self.open_figures:
            if figure is not None:
                figure.text += data
        inside = {tag for tag, _classes in self.stack}
        classes = set().union(*(classes for _tag, classes in self.stack)) if self.stack else set()
        if "style" in inside:
            return
        self.text.append(data)
        if not any(figure is not None for figure in self.open_figures) and "way" not in classes and "title" not in inside:
            self.loose_sizes += SIZE_RE.findall(data)


def read_page(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    if page.stack:
        page.problems.append("elements left open: %s" % [tag for tag, _classes in page.stack])
    return page


# ------------------------------------------------------------------- sources

def _at(document, pointer):
    value = document
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _holds(item, condition):
    if condition.endswith("?"):
        return item.get(condition[:-1]) is not None
    if condition.startswith("any="):
        return any(item.get(key) for key in condition[4:].split(","))
    if "!=" in condition:
        key, text = condition.split("!=", 1)
        return str(item.get(key)) != text
    key, text = condition.split("=", 1)
    return str(item.get(key)) == text


def _term(document, term):
    if term.startswith("#"):
        pointer, *conditions = term[1:].split(" ")
        items = _at(document, pointer)
        items = list(items.values()) if isinstance(items, dict) else items
        return sum(1 for item in items if all(_holds(item, condition) for condition in conditions))
    if term.startswith("/"):
        return _at(document, term)
    return int(term)


def evaluate(document, source):
    """The value of a figure's source (see plugins/plugin_utils/_report_figures.py) in ``document``."""
    parts = re.split(r" ([+-]) (?=[#/0-9])", source)
    total = _term(document, parts[0])
    for sign, term in zip(parts[1::2], parts[2::2], strict=True):
        total = total + _term(document, term) if sign == "+" else total - _term(document, term)
    return total


def text_matches(text, value):
    """Whether a figure's text reads as its value: a count exactly, a size to the precision shown."""
    text = text.strip()
    if re.fullmatch(r"\d{1,3}(,\d{3})*", text):
        return int(text.replace(",", "")) == value
    match = re.fullmatch(r"(\d+)(?:\.(\d+))? (B|KiB|MiB|GiB|TiB|PiB|EiB)", text)
    if match is None:
        return False
    number = float(match.group(1) + "." + (match.group(2) or "0"))
    decimals = len(match.group(2) or "")
    factor = UNITS[match.group(3)]
    if factor == 1:
        return int(number) == value
    return abs(number * factor - value) <= 0.5 * 10 ** -decimals * factor + 1
