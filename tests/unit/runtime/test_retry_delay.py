from types import SimpleNamespace

from services.runtime.messaging.acks import retry_delay


def msg(delivered: int) -> object:
    return SimpleNamespace(metadata=SimpleNamespace(num_delivered=delivered))


def test_retry_delay_doubles_with_each_delivery_up_to_a_cap() -> None:
    assert [retry_delay(msg(n)) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]  # type: ignore[arg-type]
    assert retry_delay(msg(30)) == 120.0  # type: ignore[arg-type]
    assert retry_delay(SimpleNamespace()) == 2.0  # type: ignore[arg-type]  # a core message
