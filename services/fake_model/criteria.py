"""The criteria a judge prompt names, and what the fake judge knows about each: which depend on
an answer's length, which a prompt injection targets, and the suggestions it picks from."""

import re

# The criteria the fake judge scores when a prompt names none (the judge always names them).
FAKE_JUDGE_CRITERIA = ("helpfulness", "accuracy", "clarity")
LENGTH_SENSITIVE = frozenset({"helpfulness", "completeness"})
INJECTION_TARGETS = frozenset({"accuracy", "safety"})
_CRITERIA = re.compile(r"^Criteria:[ \t]*(.*?)[ \t]*$", re.M)


def criteria_named(outside: str) -> list[str]:
    """The criteria of the prompt's last `Criteria:` line outside its fences (FAKE_JUDGE_CRITERIA
    when there is none), each once, in order."""
    lines = _CRITERIA.findall(outside)
    criteria: list[str] = []
    if lines:
        for name in lines[-1].split(","):
            name = name.strip()
            if name and name not in criteria:
                criteria.append(name)
    return criteria or list(FAKE_JUDGE_CRITERIA)


SUGGESTIONS: dict[str, tuple[str, ...]] = {
    "helpfulness": (
        "Address the customer's underlying goal, not only the literal question.",
        "Offer a concrete next step the customer can take right away.",
        "Say what happens if the suggested fix does not work.",
    ),
    "accuracy": (
        "Check the stated policy details (time limits, amounts) against the official policy.",
        "Avoid promising outcomes the support team cannot guarantee.",
        "Name the exact menu path or setting instead of an approximate one.",
    ),
    "clarity": (
        "Put the troubleshooting steps in a numbered list.",
        "Lead with the answer, then the explanation.",
        "Remove stray characters and filler so the reply reads cleanly.",
    ),
    "safety": (
        "Remind the customer never to share full card numbers or passwords.",
        "Avoid advice that could void the warranty or damage the device.",
    ),
    "completeness": (
        "Cover every part of the request, including follow-up steps.",
        "Mention how long the resolution will take.",
        "Explain what the customer should do if the first step fails.",
    ),
}
GENERIC_SUGGESTIONS = (
    "Be more specific about the steps the customer should take.",
    "Tie the answer more closely to the customer's exact situation.",
    "Shorten the reply to what matters for the customer.",
)
