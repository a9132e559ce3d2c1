"""Reading a judge request: whether a chat request is one, and the criteria and candidate answers
its user message holds (one answer, or a batch of them each labelled with an item id)."""

import re
from collections.abc import Mapping
from typing import Any

from services.fake_model.criteria import criteria_named

JUDGE_SCHEMA_NAME = "evalbus_judgment"
JUDGE_BATCH_SCHEMA_NAME = "evalbus_judgment_batch"
JUDGE_SYSTEM_MARKER = "evalbus-judge"


def is_judge_request(body: Mapping[str, Any]) -> bool:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return False
    if fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema")
        return isinstance(schema, dict) and schema.get("name") in (JUDGE_SCHEMA_NAME, JUDGE_BATCH_SCHEMA_NAME)
    if fmt.get("type") == "json_object":
        messages = body.get("messages")
        return isinstance(messages, list) and any(
            isinstance(m, dict)
            and m.get("role") == "system"
            and isinstance(m.get("content"), str)
            and JUDGE_SYSTEM_MARKER in m["content"]
            for m in messages
        )
    return False


_OPENER = re.compile(r"^<<<(?!END )([A-Z][A-Z_ ]*?) ([0-9A-Za-z]{4,64})>>>$", re.M)


def _split_fences(text: str) -> tuple[dict[str, str], str]:
    """The prompt's fenced blocks by tag, and the text outside them. The fence nonce is taken from
    the first fence line, which the judge writes before any untrusted text, so fences forged inside
    a conversation or an answer are treated as data."""
    first = _OPENER.search(text)
    if first is None:
        return {}, text
    nonce = first.group(2)
    blocks: dict[str, str] = {}
    outside: list[str] = []
    pos = search_from = 0
    while (m := _OPENER.search(text, search_from)) is not None:
        search_from = m.end()
        if m.group(2) != nonce:
            continue
        end_marker = f"\n<<<END {m.group(1)} {nonce}>>>"
        j = text.find(end_marker, m.end())
        if j < 0:
            continue
        outside.append(text[pos : m.start()])
        blocks.setdefault(m.group(1), text[m.end() + 1 : j] if j > m.end() else "")
        pos = search_from = j + len(end_marker)
    outside.append(text[pos:])
    return blocks, "".join(outside)


def parse_judge_prompt(user_message: str) -> tuple[list[str], str]:
    """(criteria, candidate answer) from the judge's user message."""
    blocks, outside = _split_fences(user_message)
    return criteria_named(outside), blocks.get("ANSWER", "")


# Batched prompts label every fence with the item's id: <<<ANSWER a3 NONCE>>> ... <<<END ANSWER a3 NONCE>>>.
_ANY_OPENER = re.compile(r"^<<<(?!END )", re.M)
_ITEM_OPENER = re.compile(r"^<<<(?!END )([A-Z][A-Z_]*) ([a-z][0-9]{1,4}) ([0-9A-Za-z]{4,64})>>>$", re.M)


def parse_batch_judge_prompt(user_message: str) -> tuple[list[str], list[tuple[str, str]]] | None:
    """(criteria, [(item id, candidate answer), ...] in prompt order) from a batched judge prompt,
    or None if it is not one. As for one answer, the nonce comes from the first fence line, and
    fences or criteria inside the data are data."""
    any_first = _ANY_OPENER.search(user_message)
    first = _ITEM_OPENER.match(user_message, any_first.start()) if any_first else None
    if first is None:  # the judge's first fence line decides, not a line forged further down
        return None
    nonce = first.group(3)
    answers: dict[str, str] = {}
    outside: list[str] = []
    pos = search_from = 0
    while (m := _ITEM_OPENER.search(user_message, search_from)) is not None:
        search_from = m.end()
        tag, item, found_nonce = m.groups()
        if found_nonce != nonce:
            continue
        end_marker = f"\n<<<END {tag} {item} {nonce}>>>"
        j = user_message.find(end_marker, m.end())
        if j < 0:
            continue
        outside.append(user_message[pos : m.start()])
        if tag == "ANSWER":
            answers.setdefault(item, user_message[m.end() + 1 : j] if j > m.end() else "")
        pos = search_from = j + len(end_marker)
    outside.append(user_message[pos:])
    return criteria_named("".join(outside)), list(answers.items())


# Score distribution before adjustments, as cumulative percentages: mostly 5-9, a few 3-4 and 10.
