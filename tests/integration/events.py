"""Small events the integration tests publish."""

from contracts.events import PromptScored


def scored(batch_id: str, i: int) -> PromptScored:
    return PromptScored(
        batch_id=batch_id, prompt_id=f"{batch_id}-{i:06d}", index=i, overall_score=7.0, passed=True, criteria_passed={}
    )
