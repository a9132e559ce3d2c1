"""The quality report's arithmetic: text fields, distributions, flags and the rating."""

import orjson

from contracts.quality import QualityConfig
from services.recorder.quality import OTHER, QualityTally, quality_flags, rating, structured, text_field


def test_text_fields_come_from_the_answer_json_then_the_metadata() -> None:
    answer = orjson.dumps({"answer": "yes", "reasoning": "because", "citations": ["a", "bc"]}).decode()
    parsed = structured(answer)
    assert parsed is not None
    assert text_field("answer", answer, parsed, {}) == "yes"
    assert text_field("citations", answer, parsed, {}) == "a\nbc"
    assert text_field("source", answer, parsed, {"source": "manual"}) == "manual"
    assert text_field("answer", "plain text", None, {}) == "plain text"
    assert text_field("reasoning", "plain text", None, {}) is None
    assert structured('```json\n{"a": 1}\n```') == {"a": 1}
    assert structured("[1, 2]") is None and structured("{not json") is None


def test_tally_lengths_distributions_and_identifier_fields() -> None:
    tally = QualityTally(QualityConfig(min_chars={"answer": 5}))
    for i in range(1200):
        meta = {"difficulty": "hard" if i % 3 else "easy", "id": f"case-{i}", "tags": ["x"], "hot": i % 2 == 0}
        tally.add("x" * (i % 10), tokens=3, metadata=meta)
    answer = next(f for f in tally.field_lengths() if f.field == "answer")
    assert (answer.present, answer.min_chars, answer.max_chars, answer.avg_chars) == (1200, 0, 9, 4.5)
    assert answer.below_min == 600  # lengths 0-4
    dist = tally.distributions()
    assert dist["difficulty"] == {"hard": 800, "easy": 400}
    assert dist["hot"] == {"true": 600, "false": 600}
    assert "id" not in dist and "tags" not in dist  # an identifier and a list are not distributions
    assert tally.tokens == 3600 and tally.samples == 1200


def test_named_distribution_fields_keep_counting_beyond_the_top_values() -> None:
    tally = QualityTally(QualityConfig(distribution_fields=["topic"]))
    for i in range(30):
        tally.add("a", 1, {"topic": f"t{i % 25}", "other": "x"})
    dist = tally.distributions()
    assert list(dist) == ["topic"] and sum(dist["topic"].values()) == 30 and dist["topic"][OTHER] == 5


def test_flags_and_rating() -> None:
    cfg = QualityConfig()
    tally = QualityTally(cfg)
    for i in range(4):
        tally.add(
            orjson.dumps({"answer": "short", "reasoning": "r" * 150}).decode(),
            10,
            {"difficulty": "easy", "topic": f"t{i}"},
        )
    flags = quality_flags(cfg, tally.field_lengths(), tally.distributions(), tally.samples, failed=0, total=4)
    assert [f.code for f in flags] == ["short_answer", "single_difficulty"]  # no citations at all: no flag
    assert flags[0].value == 5 and flags[0].threshold == 300
    assert rating(cfg, 0.9, flags) == "Needs review"
    assert rating(cfg, 0.9, []) == "Good"
    assert rating(cfg, 0.7, []) == "Needs review"
    assert rating(cfg, 0.4, []) == "Poor"
    many = quality_flags(cfg, tally.field_lengths(), tally.distributions(), tally.samples, failed=3, total=4)
    assert [f.code for f in many][-1] == "failures" and rating(cfg, 0.9, many) == "Poor"
