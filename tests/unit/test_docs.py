"""The manual and the code stay in step.

Every setting, hook, command, flag, exit code and log event that exists in the code is
documented in docs/, and the example config (etc/vip-worker.toml) loads and shows every
setting with its default.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from vip_worker import cli, config, exitcodes
from vip_worker.plugins.hookspecs import HookSpecs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SOURCE = ROOT / "daemon" / "vip_worker"
EXAMPLE = ROOT / "etc" / "vip-worker.toml"

# log.info("message.succeeded", ...), also ctx.log / self.log, with the name on the next line.
EVENT_CALL = re.compile(
    r"\blog\.(?:debug|info|warning|error|critical|exception)\(\s*"
    r"[\"']([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)[\"']"
)
# event = "poller.blocked" / ImdsError(event="spot.imds_error"): a name chosen before the call.
EVENT_ASSIGN = re.compile(r"\bevent\s*=\s*[\"']([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)[\"']")
# A heading line outside fenced code blocks.
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
# [text](path#anchor) or [text](#anchor): (path, anchor), either may be empty.
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def headings(text: str) -> list[str]:
    return HEADING.findall(FENCE.sub("", text))


def pages() -> dict[str, str]:
    return {page.name: page.read_text(encoding="utf-8") for page in sorted(DOCS.glob("*.md"))}


def page_with_heading(command: str) -> str | None:
    """The docs page with a heading naming ``command`` (e.g. `vip-worker dlq peek`)."""
    for name, text in pages().items():
        if any(re.search(rf"`{re.escape(command)}`", h) for h in headings(text)):
            return name
    return None


def section(text: str, heading: str) -> str:
    """The text under the level-2 ``heading``, up to the next level-2 heading."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def table_row(name: str) -> re.Pattern:
    return re.compile(rf"^\|\s*`{re.escape(name)}`\s*\|", re.MULTILINE)


def log_events() -> dict[str, str]:
    """Every event name the daemon's code logs -> the first file that logs it."""
    events: dict[str, str] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern in (EVENT_CALL, EVENT_ASSIGN):
            for name in pattern.findall(text):
                events.setdefault(name, str(path.relative_to(ROOT)))
    return events


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(("run",), parser), (("jobs", "list"), parser)...: every (sub)command, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


def long_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [opt for action in parser._actions for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"]


# -- configuration.md ---------------------------------------------------------------


@pytest.mark.parametrize("setting", config.worker_settings(), ids=lambda s: s.name)
def test_every_worker_setting_has_a_row_in_configuration_md(setting):
    text = read("configuration.md")
    outside_queues = text.replace(section(text, "Queue settings"), "")
    assert table_row(setting.name).search(outside_queues), (
        f"docs/configuration.md: add a table row for the setting `{setting.name}`")


@pytest.mark.parametrize("setting", config.QUEUE_SETTINGS, ids=lambda s: s.name)
def test_every_queue_setting_has_a_row_under_queue_settings(setting):
    queue_section = section(read("configuration.md"), "Queue settings")
    assert table_row(setting.name).search(queue_section), (
        f"docs/configuration.md, ## Queue settings: add a row for `{setting.name}`")


def test_every_environment_alias_is_named_in_configuration_md():
    text = read("configuration.md")
    aliases = {name for s in config.worker_settings() + config.QUEUE_SETTINGS for name in s.env}
    missing = sorted(name for name in aliases if f"`{name}`" not in text)
    assert not missing, f"docs/configuration.md does not name: {missing}"


# -- plugins.md ---------------------------------------------------------------------


@pytest.mark.parametrize("hook", sorted(n for n in dir(HookSpecs) if n.startswith("vip_worker_")))
def test_every_hook_has_a_heading_in_plugins_md(hook):
    found = [h for h in headings(read("plugins.md")) if re.search(rf"\b{hook}\b", h)]
    assert found, f"docs/plugins.md: add a heading for the hook {hook}"


# -- cli.md -------------------------------------------------------------------------


@pytest.mark.parametrize("path", [p for p, _ in commands(cli.build_parser())], ids=" ".join)
def test_every_command_is_in_cli_md_and_has_a_heading(path):
    command = "vip-worker " + " ".join(path)
    assert command in read("cli.md"), f"docs/cli.md does not mention `{command}`"
    leaf = not list(commands(dict(commands(cli.build_parser()))[path]))
    if leaf:
        assert page_with_heading(command), (
            f"docs/: no page has a heading for `{command}` (docs/cli.md, or a page it links)")


def test_every_flag_is_documented_where_its_command_is():
    parser = cli.build_parser()
    missing = [f"(global) {flag}" for flag in long_flags(parser)
               if not re.search(rf"`{re.escape(flag)}\b", read("cli.md"))]
    for path, sub in commands(parser):
        command = "vip-worker " + " ".join(path)
        page = page_with_heading(command) or "cli.md"
        text = read(page)
        missing += [f"{command} {flag} ({page})" for flag in long_flags(sub)
                    if not re.search(rf"`{re.escape(flag)}\b", text)]
    assert not missing, f"docs/ does not document: {missing}"


def test_every_exit_code_is_in_cli_md():
    text = read("cli.md")
    codes = {name: value for name, value in vars(exitcodes).items()
             if name.isupper() and isinstance(value, int)}
    missing = [f"{name} = {value}" for name, value in codes.items()
               if f"`{name}`" not in text or not re.search(rf"^\|\s*{value}\s*\|", text, re.M)]
    assert not missing, f"docs/cli.md: exit codes missing from its tables: {missing}"


# -- operations.md ------------------------------------------------------------------


def test_the_event_scan_finds_events():
    # Guards the regular expressions: an empty scan would make the next test pass vacuously.
    events = log_events()
    assert {"arbiter.started", "messages.succeeded", "poller.blocked", "metrics"} <= set(events)


@pytest.mark.parametrize("event", sorted(log_events()))
def test_every_log_event_is_in_operations_md(event):
    assert table_row(event).search(read("operations.md")), (
        f"docs/operations.md: add `{event}` (logged in {log_events()[event]}) to the event "
        f"tables")


# -- links ---------------------------------------------------------------------------


def anchors(text: str) -> set[str]:
    """The anchors GitHub makes of a page's headings: lowercase, punctuation dropped,
    spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
            for heading in headings(text)}


def broken_links(page: Path) -> list[str]:
    broken = []
    for path, anchor in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in path or path.startswith("mailto:"):
            continue
        target = page.parent / path if path else page
        if not target.exists():
            broken.append(f"{page.name}: {path} does not exist")
        elif anchor and target.suffix == ".md" and anchor not in anchors(
                target.read_text(encoding="utf-8")):
            broken.append(f"{page.name}: {path}#{anchor} names no heading")
    return broken


def test_readme_links_point_to_files_and_headings_that_exist():
    assert MARKDOWN_LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    broken = broken_links(ROOT / "README.md")
    assert not broken, f"README.md: {broken}"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_links_point_to_files_and_headings_that_exist(page):
    broken = broken_links(page)
    assert not broken, f"broken links: {broken}"


# -- etc/vip-worker.toml -------------------------------------------------------------


def example() -> dict:
    with open(EXAMPLE, "rb") as fh:
        return tomllib.load(fh)


def test_example_config_loads():
    settings = config.load(str(EXAMPLE), environ={})
    assert {q.name for q in settings.queues} == {"articles", "images"}


@pytest.mark.parametrize("setting", config.worker_settings(), ids=lambda s: s.name)
def test_example_config_shows_every_worker_setting(setting):
    text = EXAMPLE.read_text(encoding="utf-8")
    # Set, or shown commented out when its default cannot be written in TOML.
    shown = re.compile(rf"^#?\s*(?:{setting.name}\s*=|\[{setting.name}\])", re.MULTILINE)
    assert shown.search(text), f"etc/vip-worker.toml: add `{setting.name}` with its default"


def test_example_config_values_are_the_defaults():
    doc = example()
    wrong = [name for name, setting in config.worker_by_name().items()
             if name in doc and setting.parse(doc[name]) != setting.default]
    table = doc["queues"]["articles"]
    wrong += [f"queues.articles.{name}" for name, setting in config.QUEUE_BY_NAME.items()
              if name in table and name != "url" and setting.parse(table[name]) != setting.default]
    assert not wrong, f"etc/vip-worker.toml: these differ from the code's defaults: {wrong}"


def test_example_config_shows_every_queue_setting():
    table = example()["queues"]["articles"]
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [s.name for s in config.QUEUE_SETTINGS
               if s.name not in table and not re.search(rf"^#\s*{s.name}\s*=", text, re.M)]
    assert not missing, f"etc/vip-worker.toml [queues.articles]: add {missing}"
